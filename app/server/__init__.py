"""gunicorn's side of Depot: the worker that reads requests off the sockets
and hands each whole one to the WSGI app, its JSON logger, the responder
while the models load, and the bodies of gunicorn's hooks. Nothing here
imports Flask: the server and the app meet only in a request's environ
(app/environ.py)."""
