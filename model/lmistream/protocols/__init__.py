"""DJL's three ways of calling the handler, one adapter each: `rolling_batch` (one call per step over every active
request), `plain` (one call per request, streamed or whole) and `asynchronous` (newest LMI's async mode, a coroutine
per request). Each gets the service's `EngineRequests` (`lmistream.admission`) through its constructor; the service
only picks one per call.
"""
