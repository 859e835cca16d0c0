"""Outbound HTTP: the pooled client, the egress guard, fetching input images."""
