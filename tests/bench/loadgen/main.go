// Command loadgen sends a fixed request body to one URL from C concurrent keep-alive
// connections for a fixed duration and prints one JSON object: throughput, latency
// percentiles and, for streaming responses, the time to the first SSE data line and the
// time to the first token (the first data line that carries generated output: an opening
// chunk with only the role, a ping or message_start is not a token).
// It is written in Go so that generating load costs the measured services little CPU.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

type headerFlags []string

func (h *headerFlags) String() string     { return strings.Join(*h, ", ") }
func (h *headerFlags) Set(v string) error { *h = append(*h, v); return nil }

type result struct {
	Requests  int     `json:"requests"`
	Errors    int     `json:"errors"`
	Seconds   float64 `json:"seconds"`
	RPS       float64 `json:"rps"`
	P50Ms     float64 `json:"p50_ms"`
	P90Ms     float64 `json:"p90_ms"`
	P99Ms     float64 `json:"p99_ms"`
	TTFTP50Ms float64 `json:"ttft_p50_ms,omitempty"`
	TTFTP99Ms float64 `json:"ttft_p99_ms,omitempty"`
	// Time to the first data line with generated output (see carriesOutput).
	FirstTokenP50Ms float64 `json:"first_token_p50_ms,omitempty"`
	FirstTokenP99Ms float64 `json:"first_token_p99_ms,omitempty"`
	FirstError      string  `json:"first_error,omitempty"`
}

func percentile(sorted []time.Duration, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p * float64(len(sorted)-1))
	return float64(sorted[i].Microseconds()) / 1000.0
}

// carriesOutput reports whether an SSE data payload carries generated output: a Chat
// Completions chunk whose delta has content, a refusal or tool calls (OpenAI's
// chat.completion.chunk), an Anthropic content_block_delta, or a Responses API
// response.output_text.delta / function_call_arguments.delta event.
func carriesOutput(data string) bool {
	var event struct {
		Type    string `json:"type"`
		Choices []struct {
			Delta struct {
				Content   string          `json:"content"`
				Refusal   string          `json:"refusal"`
				ToolCalls json.RawMessage `json:"tool_calls"`
			} `json:"delta"`
		} `json:"choices"`
	}
	if json.Unmarshal([]byte(data), &event) != nil {
		return false
	}
	switch event.Type {
	case "content_block_delta", "response.output_text.delta", "response.function_call_arguments.delta":
		return true
	}
	for _, choice := range event.Choices {
		d := choice.Delta
		if d.Content != "" || d.Refusal != "" || (len(d.ToolCalls) > 0 && string(d.ToolCalls) != "null") {
			return true
		}
	}
	return false
}

func main() {
	url := flag.String("url", "", "target URL")
	bodyFile := flag.String("body", "", "file with the JSON request body (POST); empty for GET")
	concurrency := flag.Int("c", 1, "concurrent connections")
	duration := flag.Duration("d", 10*time.Second, "measurement duration")
	warmup := flag.Duration("warmup", 2*time.Second, "warm-up before measuring")
	stream := flag.Bool("stream", false, "measure time to the first SSE data line and to the first token")
	var headers headerFlags
	flag.Var(&headers, "H", "header 'Name: value' (repeatable)")
	flag.Parse()
	if *url == "" {
		fmt.Fprintln(os.Stderr, "-url is required")
		os.Exit(2)
	}
	var body []byte
	if *bodyFile != "" {
		var err error
		if body, err = os.ReadFile(*bodyFile); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	transport := &http.Transport{MaxIdleConns: *concurrency * 2, MaxIdleConnsPerHost: *concurrency * 2,
		DisableCompression: true, IdleConnTimeout: 90 * time.Second}
	client := &http.Client{Transport: transport, Timeout: 120 * time.Second}

	var mu sync.Mutex
	var latencies, ttfts, firstTokens []time.Duration
	errors, requests := 0, 0
	firstError := ""
	measuring := false
	start := time.Now()
	var measureStart time.Time
	stopAt := start.Add(*warmup + *duration)

	one := func() (time.Duration, time.Duration, time.Duration, error) {
		method := "GET"
		if body != nil {
			method = "POST"
		}
		req, _ := http.NewRequest(method, *url, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		for _, h := range headers {
			name, value, _ := strings.Cut(h, ":")
			req.Header.Set(strings.TrimSpace(name), strings.TrimSpace(value))
		}
		began := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return 0, 0, 0, err
		}
		defer resp.Body.Close()
		var ttft, firstToken time.Duration
		if *stream {
			reader := bufio.NewReader(resp.Body)
			for {
				line, err := reader.ReadString('\n')
				if data, ok := strings.CutPrefix(line, "data:"); ok {
					if ttft == 0 {
						ttft = time.Since(began)
					}
					if firstToken == 0 && carriesOutput(strings.TrimSpace(data)) {
						firstToken = time.Since(began)
					}
				}
				if err != nil {
					break
				}
			}
		} else {
			io.Copy(io.Discard, resp.Body)
		}
		if resp.StatusCode >= 400 {
			return 0, 0, 0, fmt.Errorf("status %d", resp.StatusCode)
		}
		return time.Since(began), ttft, firstToken, nil
	}

	var wg sync.WaitGroup
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(stopAt) {
				latency, ttft, firstToken, err := one()
				mu.Lock()
				if !measuring && time.Since(start) >= *warmup {
					// The window opens when the warm-up ends, not when a slow request
					// happens to finish after it (which would shrink the window to nothing).
					measuring = true
					measureStart = start.Add(*warmup)
				}
				if measuring {
					requests++
					if err != nil {
						errors++
						if firstError == "" {
							firstError = err.Error()
						}
					} else {
						latencies = append(latencies, latency)
						if *stream {
							ttfts = append(ttfts, ttft)
							if firstToken > 0 { // a stream without output has no first token
								firstTokens = append(firstTokens, firstToken)
							}
						}
					}
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(measureStart).Seconds()
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	sort.Slice(ttfts, func(i, j int) bool { return ttfts[i] < ttfts[j] })
	sort.Slice(firstTokens, func(i, j int) bool { return firstTokens[i] < firstTokens[j] })
	out := result{Requests: requests, Errors: errors, Seconds: elapsed,
		RPS: float64(len(latencies)) / elapsed, P50Ms: percentile(latencies, 0.50),
		P90Ms: percentile(latencies, 0.90), P99Ms: percentile(latencies, 0.99),
		TTFTP50Ms: percentile(ttfts, 0.50), TTFTP99Ms: percentile(ttfts, 0.99),
		FirstTokenP50Ms: percentile(firstTokens, 0.50), FirstTokenP99Ms: percentile(firstTokens, 0.99),
		FirstError: firstError}
	json.NewEncoder(os.Stdout).Encode(out)
}
