// Streams server-sent events: `?count=N&interval=MS` ticks, each sent the moment it is ready.
export default {
  fetch(request) {
    const url = new URL(request.url);
    const count = Math.min(Number(url.searchParams.get("count") ?? 5), 100);
    const interval = Math.min(Number(url.searchParams.get("interval") ?? 200), 5_000);
    const encoder = new TextEncoder();
    let sent = 0;
    const body = new ReadableStream({
      async pull(controller) {
        if (sent > 0) await new Promise((r) => setTimeout(r, interval));
        sent += 1;
        controller.enqueue(encoder.encode(`id: ${sent}\ndata: tick ${sent} of ${count}\n\n`));
        if (sent >= count) controller.close();
      },
    });
    return new Response(body, {
      headers: { "content-type": "text/event-stream", "cache-control": "no-store" },
    });
  },
};
