"""The on-disk format: index layout, manifests, WAL, segment and sidecar files, locks, GC."""
