"""The web console at `/ui`: usage and spend dashboards, the request log, API keys, teams
and budgets, jobs, and models with their deployments' health.

A sub-application mounted by the gateway after every API route, with its own routes,
templates (Jinja2, autoescaped), static files (the vendored htmx, Chart.js and Pico CSS)
and middleware (session cookie, CSRF, security headers), so an API request never passes
through any of it. It reads its data through the same calls the gateway's API makes:
history's API with the signed-in user's verified identity, and auth's API with the
user's own access token.
"""
