"""The results study: the project's own comparison of every method on the bundled models."""
