"""The web server: pages, the JSON API, live streams, and what every answer carries.

    pages, api        the HTML pages and the JSON API (thin: parse, call the job service)
    sse               live job streams (Server-Sent Events) with resumption
    login             `/login` and `/logout`, with the pre-session CSRF token
    health, metrics   `/healthz`, `/readyz`, `/metrics`
    errors, headers   error pages and JSON errors, security headers on every answer
    openapi           the API's OpenAPI document
    form_fields, job_display, page_context, page_cache, static_urls
                      what templates are rendered from

Uses `panel.jobs` and `panel.auth`; neither uses it.
"""
