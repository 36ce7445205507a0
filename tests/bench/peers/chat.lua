-- wrk script: POST one OpenAI chat completion per request and print one RESULT line.
-- MODEL and TOKEN come from the environment (wrk's Lua has os.getenv).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("TOKEN") or "none")
wrk.body = '{"model":"' .. (os.getenv("MODEL") or "bench-model") .. '","messages":[{"role":"user","content":"Say hello in one short sentence."}],"max_tokens":16}'
done = function(summary, latency, requests)
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT rps=%.1f p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f requests=%d errors=%d non2xx=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(50)/1000, latency:percentile(90)/1000,
    latency:percentile(99)/1000, summary.requests, errs, summary.errors.status))
end
