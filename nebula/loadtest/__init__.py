"""Load tools run against a Nebula (or any Omaha server) from outside: `nebula bench` measures
the hot path against a ceiling taken in the same run, `nebula simulate` runs a fleet of
simulated Flatcar hosts through real update cycles. Nothing here is imported by the server."""
