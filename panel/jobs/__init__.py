"""Jobs as the panel submits and reads them.

service            the job service: submit (validated by core), read, list, cancel
producer           one signed, sealed job written in one atomic step
submission_limits  per-user limits checked inside that step
catalogue_cache    the catalogue, reloaded when its files change
"""
