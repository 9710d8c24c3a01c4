"""The keys of the WSGI environ that Depot's server and its app share.

The worker (app/server/) and the Flask routes (app/web/) meet only in the
environ of one request: the server says what it offers there, the app reads
it. Both import these names from here, so neither depends on the other.
"""

#: the server tells its host once it has been idle for a moment
#: (app/server/worker.py): what the app writes for each request (counts, log
#: lines) may be held until then, off the answer's path, and written once for
#: every request served meanwhile
HOLDS_WRITES = "depot.holds_writes"
#: the model a request named, for its access line
MODEL = "depot.model"
#: the request's id (the client's, or one made for an unexpected error), for
#: its access line
REQUEST_ID = "depot.request_id"
