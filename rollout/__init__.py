"""The rollout side of canary-serve: the `canary` CLI, config checks, and (later) the controller and judge."""
