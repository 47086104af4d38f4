"""The web panel (aiohttp): catalogue, forms, submit, job pages, the JSON API.

app, appkeys  the aiohttp application and what it holds
web/          pages, API, live streams, login, health, errors and headers
jobs/         the job service, the producer, submission limits, the catalogue cache
auth/         roles, identities, credentials, sessions, tokens, users, login limits
cli/          `provision panel`, `provision up`, users and tokens
client/       the HTTP client of the API and the client commands (nothing of the server)
templates/, static/
"""
