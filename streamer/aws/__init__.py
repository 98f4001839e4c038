"""Everything streamer runs against AWS (or an S3-compatible store), and the settings they share.

- :mod:`streamer.aws.settings`: region, endpoint, profile and credentials (secrets masked in every
  representation) and the one place an aiobotocore client is made from them;
- :mod:`streamer.aws.registry`: the ``s3`` schema repository.

The catalog names the connectors by type (``repository: s3``); this package only groups them.
Modules import aiobotocore inside functions, so loading a spec never needs it.
"""
