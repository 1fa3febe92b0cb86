"""Pure helpers shared by several components (PII patterns, the safety scorer interface).

Components may import `kubetune.common` and `kubetune.api`, never each other.
"""
