"""Submits mail to knock with Python's smtplib, using the SMTP extensions a sender expects
of a submission server: DSN (RET, ENVID, NOTIFY, ORCPT), SMTPUTF8 and CHUNKING (BDAT).
Run by tests/e2e/extensions.rs as `python3 extensions.py HOST PORT`; prints one JSON
object: the features EHLO offered and, per step, the replies (code and text)."""

import json
import smtplib
import sys

host, port = sys.argv[1], int(sys.argv[2])
out = {"steps": {}}


def reply(pair):
    code, text = pair
    return [code, text.decode("utf-8", "replace") if isinstance(text, bytes) else text]


def message(subject, body):
    return f"From: s@tx.test\r\nSubject: {subject}\r\n\r\n{body}\r\n".encode()


def transaction(name, mail_options, rcpts, body, chunks=None):
    """One transaction on its own connection: MAIL with `mail_options`, RCPT for each
    (address, options), then DATA with `body`, or BDAT with `chunks`."""
    s = smtplib.SMTP(host, port)
    s.ehlo("client.test")
    steps = [reply(s.mail("s@tx.test", mail_options))]
    for address, options in rcpts:
        steps.append(reply(s.rcpt(address, options)))
    if chunks is None:
        steps.append(reply(s.data(body)))
    else:
        # smtplib has no BDAT of its own: the command and its octets, as RFC 3030 says.
        for i, chunk in enumerate(chunks):
            last = " LAST" if i == len(chunks) - 1 else ""
            s.send(f"BDAT {len(chunk)}{last}\r\n".encode() + chunk)
            steps.append(reply(s.getreply()))
    s.quit()
    out["steps"][name] = steps


s = smtplib.SMTP(host, port)
s.ehlo("client.test")
out["features"] = sorted(s.esmtp_features)
s.quit()

# Passed on to a receiver that offers DSN; the refused recipient comes back whole.
transaction(
    "passed_on",
    ["RET=FULL", "ENVID=env-A"],
    [
        ("u1@rx.test", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;orig+2Bu1@rx.test"]),
        ("permfail@rx.test", ["NOTIFY=FAILURE", "ORCPT=rfc822;orig-pf@rx.test"]),
    ],
    message("A", "body-A"),
)
# To a receiver without DSN: knock reports success itself, as relayed.
transaction("relayed", ["ENVID=env-B"], [("u2@plain.test", ["NOTIFY=SUCCESS"])], message("B", "body-B"))
# NOTIFY=NEVER: a bounce nobody hears of.
transaction("never", ["ENVID=env-C"], [("permfail@plain.test", ["NOTIFY=NEVER"])], message("C", "body-C"))
# Deferred past [retry] delay_warning: one warning.
transaction("delay", ["ENVID=env-D"], [("tempfail@rx.test", ["NOTIFY=DELAY,FAILURE"])], message("D", "body-D"))
# UTF-8 addresses: relayed with SMTPUTF8 where offered, bounced (5.6.7) where not.
transaction("utf8", ["SMTPUTF8", "ENVID=env-E"], [("jös@rx.test", [])], message("E", "body-E"))
transaction("utf8_bounce", ["SMTPUTF8", "ENVID=env-F"], [("jös@plain.test", [])], message("F", "body-F"))
# Without SMTPUTF8, a UTF-8 address is refused at RCPT.
s = smtplib.SMTP(host, port)
s.ehlo("client.test")
s.mail("s@tx.test")
# (smtplib itself would not encode it without SMTPUTF8: the line goes as bytes.)
s.send("RCPT TO:<jös@rx.test>\r\n".encode())
out["steps"]["undeclared_utf8"] = [reply(s.getreply())]
s.rset()
s.quit()
# CHUNKING: the message in two chunks.
transaction(
    "bdat",
    ["ENVID=env-H"],
    [("u3@rx.test", [])],
    None,
    chunks=[b"From: s@tx.test\r\nSubject: H\r\n\r\nfirst half, ", b"second half\r\n"],
)

print(json.dumps(out))
