"""The core: the client, its actors and handles, events, specs and stdio."""
