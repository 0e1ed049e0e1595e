"""The API's routes, one router per resource; ``fmc.central.api.app.create_app`` includes them
under ``/v1`` in this order (the order of the OpenAPI description).

``enterprises`` and ``indicators`` are built per app (``build(config)``): their ``page_size`` default
and maximum are configuration, and part of the OpenAPI description. No ``from __future__ import
annotations`` here: FastAPI reads the endpoints' annotations, and ``PageSize`` is local to ``build``.
"""
