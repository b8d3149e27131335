"""sysext hosting: systemd-sysext images that hosts' systemd-sysupdate keeps current.

    names.py   pure: image file names (`<ext>-<version>-<arch>.raw`) and the SHA256SUMS index
    store.py   queries on sysext_images and sysext_promotions (session first, never commit)
    ingest.py  an upload streamed to the payload store, hashed on the way
    admin.py   the admin API under /api/v1/sysext (token; viewer reads, admin writes)
    hosts.py   what hosts fetch: /v1/extensions/{group}/{ext}/SHA256SUMS and the images

An operator uploads an image, then promotes a version to a group (its track, GROUP= on the
host); each group's index lists exactly the versions promoted to it, so a group only sees what
was promoted to it and demoting a version takes it away. The bytes live content-addressed in the
payload store beside the payloads (nebula.store.blobs) and go out through the payload route's
serve_blob (Range, HEAD, ETag). names.py is pure; store.py imports no web code; the CLI
(nebula.cli.sysext) talks to admin.py over HTTP only.
"""
