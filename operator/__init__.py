"""kubetune.operator: the kopf operator (pure renderers and status, one API client, kopf wiring).

Import-light: nothing here imports kopf or kubernetes until a submodule is used.
"""
