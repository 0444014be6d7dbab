"""The one configuration model (options, environment, TOML file) and its key table."""
