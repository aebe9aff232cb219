"""SIPp load runs: the direct SIPp-to-SIPp baseline (``bench.sipp.direct``) that the gateway's own
figure is printed beside."""
