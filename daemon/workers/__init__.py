"""Image phases on other machines: chunk jobs on an RQ queue in Redis, run by `imgtrain worker`.

With `workers.backend: rq` the daemon still watches the inbox, claims, keeps the
ledger and writes the status; `queue.RemoteRunner` splits each batch's image
phases into chunk jobs, and records the outcomes workers send back exactly as
the local pipeline records its own. `jobs` is what a worker runs on a chunk,
`worker` is `imgtrain worker`, `status` reads the workers back for the status
file and `imgtrain workers`, and `connection` holds what both sides share.
"""
