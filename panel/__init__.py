"""The web panel (aiohttp): catalogue, forms, submit, job pages, JSON API. Not built yet."""
