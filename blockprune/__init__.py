"""blockprune: find, remove and measure removable transformer blocks."""

from blockprune.env import apply_env_defaults

apply_env_defaults()
