"""The side-effect libraries the activities call: planner and catalog, storage and mounts, uploads, the
log store, node agents and the cloud backends (`clouds/`)."""
