-- wrk: POST a JSON body that bench/realistic_app.py validates (a nested model, a header dependency)
wrk.method = "POST"
wrk.body = '{"name": "widget", "description": "a thing", "tags": ["a", "b"], "quantity": 3, ' ..
           '"price": 9.5, "metadata": {"k": "v"}, ' ..
           '"address": {"street": "1 Main St", "city": "Springfield", "postcode": "AB 12", "country": "DE"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Api-Key"] = "bench"
