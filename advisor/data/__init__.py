"""Shipped and user data: where the rule base and profiles live, line-aware YAML, the
content-keyed data cache, and safe file handling."""
