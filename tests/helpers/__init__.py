"""Helpers the test tiers share (import as `helpers.NAME`): one copy each."""
