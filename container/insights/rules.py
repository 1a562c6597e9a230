"""SageMaker Debugger's built-in rules, evaluated locally with smdebug's rule invoker.

    python -m insights.rules TRIAL_DIR_OR_S3_URI [--out summary.json] [--rule Overfit ...]
                            [--param Overfit.patience=3 ...]

prints `IssuesFound` / `NoIssuesFound` / `NotEnoughData` per rule, with the
first step that triggered it (or what the rule would need), and writes a JSON
summary. A rule that could not make a single comparison says NotEnoughData:
"no issues" would claim more than it looked at. The rules are the ones the seeds
attached (VanishingGradient, Overfit, Overtraining, PoorWeightInitialization,
LossNotDecreasing) plus ExplodingTensor and WeightUpdateRatio, with the
parameter names and defaults AWS documents for its built-in rules.

RULES is the one list both sides use: `sagemaker_debugger_config()` builds the
SageMaker SDK objects (Rule.sagemaker(rule_configs...), DebuggerHookConfig,
ProfilerConfig and the profiler rules) from it, so the rules run locally and
in AWS agree. Steps are smdebug's global steps; "TRAIN step" / "EVAL step"
mean a step's number within its mode.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field

from smdebug.rules import invoke_rule

from insights.loss_rules import LossNotDecreasing, Overfit, Overtraining
from insights.tensor_rules import ExplodingTensor, PoorWeightInitialization, VanishingGradient, WeightUpdateRatio
from insights.trial import ISSUES, NO_ISSUES, NOT_ENOUGH_DATA, open_trial  # noqa: F401  (callers' names)


@dataclass(frozen=True)
class RuleSpec:
    cls: type
    sdk_config: str  # the function in sagemaker.debugger.rule_configs
    parameters: dict = field(default_factory=dict)  # overrides of AWS's defaults, for both sides

    @property
    def name(self) -> str:
        return self.cls.__name__


RULES = [
    RuleSpec(VanishingGradient, "vanishing_gradient"),
    RuleSpec(Overfit, "overfit"),
    RuleSpec(Overtraining, "overtraining"),
    RuleSpec(PoorWeightInitialization, "poor_weight_initialization"),
    # TRAIN: a validation pass is a handful of steps, too few for num_steps=10 to compare anything
    RuleSpec(LossNotDecreasing, "loss_not_decreasing", {"mode": "TRAIN"}),
    RuleSpec(ExplodingTensor, "exploding_tensor"),
    RuleSpec(WeightUpdateRatio, "weight_update_ratio"),
]
BY_NAME = {spec.name: spec for spec in RULES}
# Collections the rules read, with the save interval AWS's rule configs use; but the losses every
# step (one number each): LossNotDecreasing and Overtraining take medians of several saved losses.
COLLECTIONS = {"losses": 1, "weights": 500, "gradients": 500, "relu_input": 500}
PROFILER_RULES = ["ProfilerReport", "LowGPUUtilization", "CPUBottleneck", "IOBottleneck", "BatchSize", "StepOutlier"]


def sagemaker_debugger_config(
    s3_output_path: str | None = None,
    rule_names: list[str] | None = None,
    parameters: dict | None = None,
    collections: dict | None = None,
    system_monitor_interval_millis: int = 500,
) -> dict:
    """Estimator keyword arguments: rules, debugger_hook_config, profiler_config.

    `parameters` = {"Overfit": {"patience": 3}} overrides RULES' parameters;
    `collections` = {"losses": 10} overrides COLLECTIONS' save intervals.
    """
    from sagemaker.debugger import (
        CollectionConfig,
        DebuggerHookConfig,
        ProfilerConfig,
        ProfilerRule,
        Rule,
        rule_configs,
    )

    rules = []
    for spec in (BY_NAME[n] for n in (rule_names or [s.name for s in RULES])):
        values = {**spec.parameters, **(parameters or {}).get(spec.name, {})}
        rules.append(
            Rule.sagemaker(
                getattr(rule_configs, spec.sdk_config)(), rule_parameters={k: str(v) for k, v in values.items()}
            )
        )
    intervals = {**COLLECTIONS, **(collections or {})}
    configs = [CollectionConfig(name, parameters={"save_interval": str(every)}) for name, every in intervals.items()]
    if "relu_input" in intervals:
        configs[list(intervals).index("relu_input")].parameters["include_regex"] = ".*relu_input"
    hook = DebuggerHookConfig(s3_output_path=s3_output_path, collection_configs=configs)
    profiler_rules = [ProfilerRule.sagemaker(getattr(rule_configs, name)()) for name in PROFILER_RULES]
    return {
        "rules": rules + profiler_rules,
        "debugger_hook_config": hook,
        "profiler_config": ProfilerConfig(system_monitor_interval_millis=system_monitor_interval_millis),
    }


def run(trial_path: str, rule_names: list[str] | None = None, parameters: dict | None = None) -> dict:
    """Evaluate the rules over a finished trial; {rule: {status, first_step, message, parameters,
    judgements}}, status IssuesFound, NoIssuesFound or NotEnoughData (message: what was missing)."""
    trial = open_trial(trial_path)
    steps = trial.steps()
    results = {}
    for spec in (BY_NAME[n] for n in (rule_names or [s.name for s in RULES])):
        values = {**spec.parameters, **(parameters or {}).get(spec.name, {})}
        rule = spec.cls(trial, **values)
        if steps:
            # end_step: a trial's last step is known, and invoke_rule would otherwise wait for more
            invoke_rule(rule, start_step=steps[0], end_step=steps[-1] + 1)
        status, message = rule.verdict()
        results[spec.name] = {
            "status": status,
            "first_step": rule.first_step,
            "message": message,
            "parameters": values,
            "steps_checked": rule.checked,
            "judgements": rule.judged,
        }
    return results


def _parse_params(items: list[str]) -> dict:
    params: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        rule, _, name = key.partition(".")
        if rule not in BY_NAME or not name:
            raise SystemExit(f"--param {item!r}: expected Rule.parameter=value, Rule one of {', '.join(BY_NAME)}")
        params.setdefault(rule, {})[name] = value
    return params


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m insights.rules", description=__doc__.split("\n\n")[0])
    parser.add_argument("trial", help="smdebug trial folder or s3:// URI (e.g. /opt/ml/output/tensors)")
    parser.add_argument("--out", help="JSON summary file")
    parser.add_argument("--rule", action="append", choices=list(BY_NAME), help="only these rules")
    parser.add_argument("--param", action="append", default=[], help="Rule.parameter=value")
    args = parser.parse_args(argv)
    results = run(args.trial, args.rule, _parse_params(args.param))
    for name, result in results.items():
        where = f" at step {result['first_step']}" if result["first_step"] is not None else ""
        why = f": {result['message']}" if result["message"] else ""
        print(f"{name:26s} {result['status']}{where}{why}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"trial": args.trial, "rules": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
