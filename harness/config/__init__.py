"""Where things are: target files (`targets/*.toml`) and whether a target is ready."""
