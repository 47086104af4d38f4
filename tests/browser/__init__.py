"""Real-browser tests: `provision up` driven by chromium through Playwright."""
