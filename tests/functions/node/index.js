// Ember's Node.js test function, CommonJS: the handlers the KVM tests and the nodejs20.x
// image's smoke test (rootfs/runtimes/nodejs20.x/recipe.sh) invoke as index.<name>.
"use strict";

// The event back, from an async handler.
exports.echo = async (event) => event;

// Callback style: the event back, or with {"fail": MESSAGE} a RangeError, through the callback.
exports.callback = (event, context, callback) => {
    setImmediate(() => {
        if (event.fail) {
            callback(new RangeError(event.fail));
        } else {
            callback(null, { callback: true, awsRequestId: context.awsRequestId, event });
        }
    });
};

// What the runtime interface client passes as the context, where the handler runs, and the
// package of a layer's nodejs/node_modules when the function has that layer. With
// {"throw": NAME} it throws an error of that class instead.
exports.context = async (event, context) => {
    if (event.throw) {
        throw new globalThis[event.throw](`thrown as asked by ${context.awsRequestId}`);
    }
    const remaining = context.getRemainingTimeInMillis();
    console.log("context of", context.awsRequestId);
    let layer = null;
    try {
        const lib = require("ember-layer-lib");
        layer = { greeting: lib.greet("node"), from: require.resolve("ember-layer-lib") };
    } catch (e) {
        if (e.code !== "MODULE_NOT_FOUND") throw e;
    }
    return {
        awsRequestId: context.awsRequestId,
        functionName: context.functionName,
        functionVersion: context.functionVersion,
        invokedFunctionArn: context.invokedFunctionArn,
        memoryLimitInMB: context.memoryLimitInMB,
        remainingMs: remaining,
        logGroupName: context.logGroupName,
        logStreamName: context.logStreamName,
        node: process.versions.node,
        cwd: process.cwd(),
        layer,
        env: Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("AWS_SECRET"))),
    };
};

// A thrown error: its constructor's name is the errorType.
exports.fail = async () => {
    throw new TypeError("boom");
};

