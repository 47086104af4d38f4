"""The HTTP client of the panel's API, and the commands built on it.

    panel_client  an aiohttp client of the JSON API and its live stream
    commands      `provision submit|jobs|logs|cancel`

Talks to the panel over HTTP only, with the same access rules as anyone: it imports nothing
of the server (a test checks it).
"""
