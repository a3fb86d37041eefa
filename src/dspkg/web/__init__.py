"""``dspkg serve``: read-only web pages and a JSON API over one store.

Needs the ``web`` extra (``pip install 'dspkg[web]'``: Starlette, Jinja2, uvicorn). This
package's ``__init__`` imports none of them, so the command line can say so in one line.

- :mod:`dspkg.web.app`: the application, pages and their ``/api/`` twins
- :mod:`dspkg.web.views`: the data of every page (what the API returns and pages render)
- :mod:`dspkg.web.manifests`: every manifest read, kept and indexed per version
- :mod:`dspkg.web.preview`, :mod:`dspkg.web.downloads`: verified bytes
- :mod:`dspkg.web.security`: bind rule, token, Host check, headers
- :mod:`dspkg.web.server`: uvicorn
"""

# The modules that the `web` extra brings; a missing one means the extra is missing.
WEB_MODULES = frozenset({"starlette", "jinja2", "uvicorn", "markupsafe", "anyio", "h11"})
