"""The SimPLe loop: collect real experience, train the world model, train the policy in imagination."""
