"""The panel's server-side commands.

serve   `provision panel`: the web server in the foreground
up      `provision up`: Redis, panel and agent on this machine, until Ctrl-C
access  `provision users ...` and `provision tokens ...`, straight on Redis
"""
