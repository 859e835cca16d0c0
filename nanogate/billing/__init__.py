"""Credits: price math (prices), money movements as SQL (ledger), transactions and group commit
(runners), the named steps a metered call walks (meter), and accounts for operators."""
