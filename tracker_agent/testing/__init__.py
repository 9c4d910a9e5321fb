"""A fake Exponea API on 127.0.0.1 for testing code that talks to Exponea (ours and yours).

FakeExponea is a real threaded HTTP/1.1 server (keep-alive, stdlib only) that keeps state like
the real API: tracked events and customer updates can be read back through the data endpoints,
catalogs are stored, analyses answer what the test set. Faults can be injected, and every
request is logged::

    from tracker_agent import Exponea
    from tracker_agent.testing import FakeExponea

    def test_purchase_is_tracked():
        with FakeExponea(project_token="test-project", username="key-id", password="pw") as fake:
            exponea = Exponea("test-project", username="key-id", password="pw", url=fake.url)
            fake.fail_next(status=503, retry_after=1)   # the first attempt gets a 503
            exponea.tracking.add_event({"registered": "ann"}, "purchase", timestamp=1700000000.5)
            ...
            assert fake.events == [{"customer_ids": {"registered": "ann"},
                                    "event_type": "purchase", "timestamp": 1700000000.5,
                                    "properties": {}}]

Authentication: /track/... endpoints take HTTP Basic username:password or
"Authorization: Token <public_key>"; /data/... endpoints take Basic only. Anything else (or
after revoke_credentials()) answers 401 {"success": false, "errors": ["Could not authenticate"]}.
GET .../system/time needs no credentials. A project token other than the fake's answers 400
{"success": false, "errors": ["Invalid project id"]}. POST/PUT bodies must be JSON objects
(else 400). Unknown paths answer 404, a wrong method 405.

Endpoints ({t} = project token)::

    POST /track/v2/projects/{t}/customers/events {customer_ids, event_type, timestamp?, properties?}
    POST /track/v2/projects/{t}/customers        {customer_ids, properties?, update_timestamp?}
         both: 200 {"success": true, "errors": []}, or 400 {"success": false, "errors": [...]}
    GET  /track/v2/projects/{t}/system/time        {"success": true, "errors": [], "time": float}
    POST /track/v2/projects/{t}/batch              {"commands": [{"name", "data", "command_id"?}]}
         -> {"success": true, "start_time", "end_time",
             "results": [{"success": bool, "errors"?: [...], "time"?: float, "command_id"?}]}
         names "customers/events", "customers", "system/time"; > max_batch_commands (50) -> 400
    POST /data/v2/projects/{t}/customers/export-one  {customer_ids}
         -> {"success": true, "ids": {...}, "properties": {...},
             "events": [{type, timestamp, properties}] (oldest first)}
    POST /data/v2/projects/{t}/customers/attributes  {customer_ids, attributes: [{"type", ...}]}
         -> {"success": true, "results": [{"success": true, "value": ...}]}
    POST /data/v2/projects/{t}/customers/export      {"format": "native_json"}
         -> {"success": true, "fields": [{"type": "id", "id"} ..., {"type": "property",
             "property"} ...], "data": [[id values..., property values...], ...]}
    POST /data/v2/projects/{t}/customers/events      {customer_ids, event_types: [...]}
         -> {"success": true, "data": [{type, timestamp, properties}]}
    POST /data/v2/projects/{t}/customers/anonymize   {customer_ids} -> {"success": true}
         (unknown customer on these four: 404 {"success": false,
          "errors": {"_global": ["Customer does not exist"]}})
    GET    /data/v2/projects/{t}/catalogs                     {"success", "data": [{id, name}]}
    POST   /data/v2/projects/{t}/catalogs  {name, fields: [{"name"}]} -> {"success", "id"}
    GET    /data/v2/projects/{t}/catalogs/{id}        {"success", "data": {id, name, fields}}
    PUT    /data/v2/projects/{t}/catalogs/{id}        {name, fields} (existing fields kept)
    DELETE /data/v2/projects/{t}/catalogs/{id}
    GET    /data/v2/projects/{t}/catalogs/{id}/items?skip=&limit=&query=&field=
           -> {"success", "data": [{catalog_id, item_id, properties}], "skip", "limit",
               "matched", "matched_limited": false, "total"}
    DELETE /data/v2/projects/{t}/catalogs/{id}/items                   (all items)
    GET    /data/v2/projects/{t}/catalogs/{id}/items/{item}  {"success", "data": {...}}
    PUT    /data/v2/projects/{t}/catalogs/{id}/items/{item}  {properties} (create or replace)
    POST   /data/v2/projects/{t}/catalogs/{id}/items/{item}/partial-update  {properties}
    DELETE /data/v2/projects/{t}/catalogs/{id}/items/{item}
           (unknown catalog or item: 404)
    POST /data/v2/projects/{t}/analyses/report|funnel|segmentation
         {"analysis_id", "format": "table_json"} -> {"success", "name", "header", "rows"} (404)

Semantics kept from the real API: an event identical to an earlier one (customer_ids,
event_type, timestamp, properties) is acknowledged but stored once (not for "consent"
events); a missing timestamp or update_timestamp means "now"; a property update older than
the stored value's update_timestamp is ignored; consent attributes come from the latest
"consent" event of the category (action "accept" and valid_until not past).

Faults are queued and each request consumes at most one (optionally only on paths containing
`path_contains`). These answer instead of the API, so nothing is applied:

- fail_next: answer a status and body (a dict as JSON; a str/bytes raw, as text/plain or
  `content_type`, e.g. truncated JSON '{"success": true, "resu'), optional Retry-After;
- captive_portal_next: a captive portal, a 200 HTML login page, or with redirect=True a 302
  whose Location is CAPTIVE_PORTAL_URL;
- trickle_next: the answer (a 503 by default) written one byte every `interval` seconds
  (headers_first=True: only the body trickles), until the client hangs up;
- oversize_next: a 200 JSON-looking body of `size` bytes (default 17 MiB, over the client's
  16 MiB cap), with or without Content-Length;
- drop_next: close the connection without a byte.

These let the API handle the request: delay_next (handle it late, and not at all if the client
hung up meanwhile; apply_first=True acts at once and only answers late) and
mangle_results_next (a batch is applied, but its answer keeps only its first `keep` results: a
wrong result count). clear_faults drops the queue (a fault with a large n is a mode until
cleared). Plus `latency` for every request, reject_commands (per-command failure),
reject_batches_containing (refuse the whole batch) and max_batch_commands.

The lists `requests` and `batches` log everything received, faulted requests included;
RecordedRequest.processed tells the requests the API handled (only those can have changed
anything) and hung_up_at when the client gave up on an answer still being written.

As a process, to try the daemon without an account: `python -m tracker_agent.testing
[--host H] [--port P] [--project-token T] [--username U] [--password P] [--public-key K]`
prints the URL, the test credentials and the TRACKER_AGENT_* variables to export, and serves
until SIGINT or SIGTERM (exit 0); see serve.py.
"""

from __future__ import annotations

from tracker_agent.testing.fake import FakeExponea
from tracker_agent.testing.records import RecordedRequest

__all__ = ["FakeExponea", "RecordedRequest"]
