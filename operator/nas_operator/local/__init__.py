"""The `nasctl run` shell: the loop on this machine and the results directory it writes."""
