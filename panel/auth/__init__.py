"""Who may do what: identities, credentials, roles, limits on guessing.

    access       roles, the route permission table, the access middleware, CSRF
    identity     the identity behind a request: an API token, else the session cookie
    credentials  a credential and its user read in one round trip (lua/authenticate.lua)
    sessions, tokens, users
                 the stores of browser sessions, API tokens and users (argon2id)
    hashed_store what sessions and tokens share: a hash under the SHA-256 of the secret
    ratelimit    fixed-window counters for failed logins

Knows nothing of pages or jobs.
"""
