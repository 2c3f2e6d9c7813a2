-- The example table that `docker compose up` mirrors. The postgres image runs this file once, on an
-- empty data volume, as the POSTGRES_USER: that role owns the table, as `vecmirror migrate` needs
-- (creating the capture trigger takes ownership).
CREATE TABLE public.docs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title text NOT NULL,
    content text NOT NULL,
    genre text NOT NULL,
    price numeric(10, 2)
);

INSERT INTO public.docs (title, content, genre, price) VALUES
    ('The cat', 'A small cat sleeps on the warm windowsill all afternoon.', 'pets', 12.50),
    ('The dog', 'A loyal dog waits by the door for its owner to come home.', 'pets', 18.00),
    ('The mouse', 'A field mouse gathers seeds before the first frost.', 'wildlife', 7.25),
    ('The barn', 'Cows and goats share the old red barn on the hill.', 'farm', 22.00),
    ('The harbour', 'Fishing boats come back to the harbour at dawn.', 'travel', 30.00),
    ('The bakery', 'Fresh bread and warm croissants fill the shop each morning.', 'food', 4.80);
