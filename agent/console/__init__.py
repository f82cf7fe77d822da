"""The console: staff acknowledge alerts, silence sirens and run the test chirp from a signed link or the command line.

It runs on the backend (``denen console -c config/console/console.yaml``), beside the bridge, and needs nothing
but the standard library, paho-mqtt and the bridge's sink code:

* **HTTP** (:mod:`agent.console.service`): ``http.server.ThreadingHTTPServer`` speaking plain HTTP on loopback or
  inside the compose network, behind the stack's TLS reverse proxy. Pages (:mod:`agent.console.pages`) are
  Japanese with English alongside, one column that fits a phone, no script and no external asset; a strict
  Content-Security-Policy, ``Referrer-Policy: no-referrer`` (the token is in the URL) and ``Cache-Control:
  no-store``. Routes: ``GET /a/<token>`` (the alert and its form), ``POST /a/<token>`` (the form), ``GET
  /r/<request_id>`` (the command's progress and answer, refreshing itself every 2 s while waiting), ``GET
  /healthz``.
* **Links** (:mod:`agent.console.links`): ``<public_url>/a/<token>``, token = ``base64url(JSON {g, k, e, n[, r]})
  "." base64url(HMAC-SHA256(secret, "denen.link/1." + payload))``: gateway, alert key, expiry (epoch s), nonce and
  optionally the recipient (the form's default name). Malformed links answer 400, forged and expired ones 403.
  The form carries a token bound to its link (HMAC of the token under another domain prefix); the POST
  re-verifies the link and that token.
* **MQTT** (:mod:`agent.console.commands`): its own login (``denen-console``), which may publish only
  ``<prefix>/+/cmd/{alert-ack,siren-silence,test-chirp}`` and read ``<prefix>/+/state`` and
  ``<prefix>/+/results``. The latest retained state per gateway says which alerts are open and what the siren
  does (:mod:`agent.console.state`). A command goes out at QoS 1 and again every ``commands.retry_s`` until the
  gateway's result with its ``request_id`` arrives, or ``commands.give_up_s`` passed.
* **Audit** (:mod:`agent.console.audit`): every action is an ``alert_ack`` point (who, from where, which raise,
  how long after it) and a log line; the gateway's answer (or ``timeout``) is a second point at ts + 1 µs.

What is refused, and answered so, without publishing anything: a link that is malformed, forged or expired; a form
not served for that link; an action on an alert the gateway's state does not show open; a confirm of a link (or a
raise) already confirmed, answered "already acknowledged by X at T". ``denen ack`` (:mod:`agent.console.main`)
does the same from the command line: ``link`` prints a signed URL, ``ack`` / ``silence`` / ``test-chirp`` send the
command with the config's login and wait for the answer.
"""

# Nothing is imported here: agent.cli imports agent.console.main to build its parser at every start.
