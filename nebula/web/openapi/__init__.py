"""The admin API's OpenAPI 3.1 document: `spec` holds what each handler declares beside itself
(`@doc(...)`) and the shared schemas; `document` builds the document from the router's own
routes and serves it at GET /api/v1/openapi.json.
"""
