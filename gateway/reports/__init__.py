"""Reports: live calls, CDRs and the PSTN usage report."""
