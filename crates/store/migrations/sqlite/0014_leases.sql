-- Leadership of the background reconcilers among server replicas: one row per role, held by one
-- replica until expires_at; epoch counts the hand-overs (a fencing token).
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL
);
