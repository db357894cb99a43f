-- Sample booking database (the TRIXTECH booking system's core tables).
-- :scale sets the number of users; services and bookings scale with it.
CREATE TABLE IF NOT EXISTS users (
    id          bigserial PRIMARY KEY,
    email       text NOT NULL UNIQUE,
    full_name   text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS services (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    price_cents integer NOT NULL CHECK (price_cents >= 0),
    duration_minutes integer NOT NULL
);
CREATE TABLE IF NOT EXISTS bookings (
    id          bigserial PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users(id),
    service_id  bigint NOT NULL REFERENCES services(id),
    starts_at   timestamptz NOT NULL,
    status      text NOT NULL CHECK (status IN ('confirmed', 'cancelled', 'completed')),
    notes       text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS bookings_user_idx ON bookings(user_id);
CREATE INDEX IF NOT EXISTS bookings_starts_idx ON bookings(starts_at);

INSERT INTO users (email, full_name, created_at)
SELECT 'user' || g || '@example.com', 'User ' || g, timestamptz '2024-01-01' + (g || ' minutes')::interval
FROM generate_series(1, :scale) AS g;

INSERT INTO services (name, price_cents, duration_minutes)
SELECT 'Service ' || g, 1000 + (g * 137) % 9000, 15 * (1 + g % 8)
FROM generate_series(1, greatest(5, :scale / 100)) AS g;

INSERT INTO bookings (user_id, service_id, starts_at, status, notes, created_at)
SELECT 1 + (g * 7919) % :scale,
       1 + (g * 31) % greatest(5, :scale / 100),
       timestamptz '2024-01-01' + (g || ' hours')::interval,
       (ARRAY['confirmed', 'cancelled', 'completed'])[1 + g % 3],
       md5(g::text),
       timestamptz '2024-01-01' + (g || ' minutes')::interval
FROM generate_series(1, :scale * 4) AS g;
ANALYZE;
