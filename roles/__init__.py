"""pyinfra roles: one @deploy per concern, all reading their settings from roles/defaults.py.

base -> model -> runtime -> gateway, composed in deploys/site.py.
"""
