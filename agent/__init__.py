"""The agent daemon: consumer loop, security layers, sandboxed runner. Not built yet."""
