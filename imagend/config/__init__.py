"""Configuration: the settings read once at start from the environment and `.env`, the typed
environment reader, Go durations and connection-string checks."""
