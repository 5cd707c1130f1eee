"""Reusable pieces for Tollgate's end-to-end tests.

- :mod:`harness.ports`      -- free loopback ports
- :mod:`harness.procs`      -- start / stop a process with its log kept in a file
- :mod:`harness.envoy`      -- find the Envoy binary, render the gateway config, run Envoy
- :mod:`harness.echo`       -- an upstream that answers with the request it received (JSON)
- :mod:`harness.issuer`     -- a JWKS issuer the test controls (keys, outages, crafted tokens)
- :mod:`harness.authserver` -- run the real auth server binary, register clients, get tokens

Every server listens on 127.0.0.1 only. See tests/e2e/harness/README.md.
"""
