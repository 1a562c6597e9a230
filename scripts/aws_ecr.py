#!/usr/bin/env python3
"""The AWS calls build_and_push.sh makes, through boto3 (no AWS CLI needed).

    aws_ecr.py account                 -> the caller's account id (STS)
    aws_ecr.py ensure-repo NAME        -> creates NAME if missing (scan on push,
                                          untagged images expire), prints its URI
    aws_ecr.py login-password          -> the registry password for `docker login`

Region from AWS_REGION / AWS_DEFAULT_REGION or the configured profile;
AWS_ENDPOINT_URL is honoured (tests point it at moto's server on 127.0.0.1).
Failures print one line and exit 1.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Callable

# Untagged images (the previous build of a tag) expire after a week.
LIFECYCLE_POLICY = {
    "rules": [
        {
            "rulePriority": 1,
            "description": "expire untagged images after 7 days",
            "selection": {
                "tagStatus": "untagged",
                "countType": "sinceImagePushed",
                "countUnit": "days",
                "countNumber": 7,
            },
            "action": {"type": "expire"},
        }
    ]
}


def client(name: str):
    import boto3

    return boto3.client(name)


def account() -> str:
    return client("sts").get_caller_identity()["Account"]


def ensure_repo(name: str) -> str:
    ecr = client("ecr")
    try:
        repo = ecr.describe_repositories(repositoryNames=[name])["repositories"][0]
        print(f"repository {name} exists", file=sys.stderr)
    except ecr.exceptions.RepositoryNotFoundException:
        repo = ecr.create_repository(
            repositoryName=name, imageScanningConfiguration={"scanOnPush": True}, imageTagMutability="MUTABLE"
        )["repository"]
        ecr.put_lifecycle_policy(repositoryName=name, lifecyclePolicyText=json.dumps(LIFECYCLE_POLICY))
        print(f"repository {name} created (scan on push, untagged images expire after 7 days)", file=sys.stderr)
    return repo["repositoryUri"]


def login_password() -> str:
    token = client("ecr").get_authorization_token()["authorizationData"][0]["authorizationToken"]
    return base64.b64decode(token).decode().split(":", 1)[1]


def main(argv: list[str]) -> int:
    try:
        import botocore.exceptions
    except ImportError:
        print("boto3 is needed on the host: pip install boto3 (or use .venv/bin/python)", file=sys.stderr)
        return 1
    commands: dict[str, Callable[..., str]] = {
        "account": account,
        "ensure-repo": ensure_repo,
        "login-password": login_password,
    }
    if not argv or argv[0] not in commands:
        print(f"usage: aws_ecr.py {'|'.join(commands)} [NAME]", file=sys.stderr)
        return 2
    try:
        print(commands[argv[0]](*argv[1:]))
    except botocore.exceptions.NoCredentialsError:
        print(
            "no AWS credentials: configure a profile, or set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY", file=sys.stderr
        )
        return 1
    except botocore.exceptions.NoRegionError:
        print("no AWS region: set AWS_REGION (or AWS_DEFAULT_REGION), or configure one", file=sys.stderr)
        return 1
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        print(f"AWS call failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
