"""The web console's parts that know nothing of HTTP: sessions and CSRF tokens
(``sessions``), the shaping of usage reports (``views``), the Jinja2 environment
(``render``), and the templates and static files (``templates/``, ``static/``; the
vendored libraries and their licences are in ``static/vendor/``). The pages and the
proxy that serve them are ``maas.api.console`` and ``maas.api.console_proxy``."""
