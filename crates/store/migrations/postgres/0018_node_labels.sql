-- Labels an agent registers its node with (`--label k=v` or its config file), one "key=value"
-- line each (keys hold no "=", neither holds a line break); NULL for none.
ALTER TABLE nodes ADD COLUMN labels TEXT;
